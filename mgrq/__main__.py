import sys

from mgrq.cli import main

sys.exit(main())

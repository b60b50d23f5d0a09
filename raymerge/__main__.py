import sys

from raymerge.cli import main

sys.exit(main())

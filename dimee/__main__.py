import sys

from dimee.cli import main

sys.exit(main())

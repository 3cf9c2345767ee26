import sys

from ctkd.cli.main import main

sys.exit(main())

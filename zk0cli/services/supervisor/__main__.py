"""``python -m zk0cli.services.supervisor run|preload ...``: how detached supervisors and warm spares start."""

import sys

from zk0cli.services.supervisor import main

sys.exit(main(sys.argv[1:]))

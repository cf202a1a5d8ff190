"""``python -m zk0cli.services.supervisor run|preload ...``: how detached supervisors and warm spares start."""

import sys

from zk0cli.services.supervisor.launch import main

sys.exit(main(sys.argv[1:]))

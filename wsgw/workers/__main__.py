"""``python -m wsgw.workers``: one worker process (wsgw/workers/child.py), as the supervisor starts it."""

import sys

from wsgw.workers.child import main

sys.exit(main())

"""`python -m components.serving --model …`: the server without the CLI on top."""

import sys

from components.serving.server import main

sys.exit(main())

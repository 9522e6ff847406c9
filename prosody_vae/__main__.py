"""`python -m prosody_vae` is the `prosody-vae` command."""

import sys

from .cli import main

sys.exit(main())

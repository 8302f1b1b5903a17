import sys

from score_upstream.pretrained import main

sys.exit(main())

from oe.cli import main

raise SystemExit(main())

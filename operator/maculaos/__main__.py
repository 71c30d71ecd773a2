from maculaos.cli import main

raise SystemExit(main())

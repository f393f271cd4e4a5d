from messaging.cli import main

raise SystemExit(main())

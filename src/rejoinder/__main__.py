from rejoinder.cli import main

raise SystemExit(main())

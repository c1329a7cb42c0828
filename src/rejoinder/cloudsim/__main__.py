from rejoinder.cloudsim.service import main

raise SystemExit(main())

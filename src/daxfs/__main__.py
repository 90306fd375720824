from daxfs.cli import main

raise SystemExit(main())

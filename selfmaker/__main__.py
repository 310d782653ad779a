from selfmaker.cli import main

raise SystemExit(main())

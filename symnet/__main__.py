from symnet.cli import main

raise SystemExit(main())

from tempflow.cli.main import main

raise SystemExit(main())

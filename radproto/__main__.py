from radproto.cli import main

raise SystemExit(main())

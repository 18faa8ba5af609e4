from evoprune.cli import main

raise SystemExit(main())

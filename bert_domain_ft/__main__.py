"""``python -m bert_domain_ft`` is the same as the ``bert-domain-ft`` command."""

from bert_domain_ft.cli import main

raise SystemExit(main())

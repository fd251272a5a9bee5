"""``python -m bert_domain_ft`` is the same as the ``bert-domain-ft`` command."""

from .cli import main

raise SystemExit(main())

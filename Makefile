# Thin aliases; tasks.py is the one place the commands live (it needs only Python).
.PHONY: run test lint fmt typecheck bench reliability
run:       ; python3 tasks.py run
test:      ; python3 tasks.py test
lint:      ; python3 tasks.py lint
fmt:       ; python3 tasks.py fmt
typecheck: ; python3 tasks.py typecheck
bench:     ; python3 tasks.py bench
reliability: ; python3 tasks.py reliability

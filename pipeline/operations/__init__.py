"""What an operator can ask and change, once, for every surface: the Admin API serves
these operations over HTTP and the CLI prints the same models, so that both answer the
same question with the same JSON."""

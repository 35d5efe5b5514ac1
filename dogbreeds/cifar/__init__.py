"""`dogbreeds cifar`: the classic ten- and hundred-class experiments on the engine the dog job uses.

A client of the engine like any user's script: only the command line imports this package, and
nothing of the dog path imports it. `experiment` runs the models; `data` reads CIFAR's files;
`networks` and `airbench` are the networks trained from scratch.
"""

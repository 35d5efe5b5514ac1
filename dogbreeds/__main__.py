from dogbreeds.cli import main

main()

from ppml.cli.main import main

main()

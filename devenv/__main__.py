from devenv.cli import main

main()

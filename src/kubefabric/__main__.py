from kubefabric.cli import main

main()

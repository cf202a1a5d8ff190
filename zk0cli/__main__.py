from zk0cli.cli.app import main

main()

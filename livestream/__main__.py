from livestream.cli import main

main()

from dvdm.cli import main

main()

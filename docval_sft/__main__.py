from docval_sft.cli import main

main()

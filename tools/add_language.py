"""Add a language to an RC3 model directory by aligning it to English on parallel text.

The `rc3-add-language` command from a checkout: rc3.tools.add_language.
"""
from rc3.tools.add_language import main

if __name__ == "__main__":
    main()

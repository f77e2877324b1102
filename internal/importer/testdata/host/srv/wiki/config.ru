run Wiki

require "./app"; run Admin

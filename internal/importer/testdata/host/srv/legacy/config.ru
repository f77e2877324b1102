require ::File.expand_path("../config/environment",  __FILE__)
run Legacy::Application

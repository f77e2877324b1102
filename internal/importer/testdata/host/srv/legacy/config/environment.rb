Legacy::Application.initialize!

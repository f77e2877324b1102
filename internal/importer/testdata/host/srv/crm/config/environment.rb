Rails.application.initialize!

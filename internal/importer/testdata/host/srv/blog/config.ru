run ->(env) { [200, {}, ["blog"]] }

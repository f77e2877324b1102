run Tools

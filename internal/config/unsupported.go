package config

// notYetSupported lists the settings that this version of sact parses and validates but
// does not act on yet. Using one is an error, never a silent no-op. When a feature lands,
// delete its entry here; nothing else refers to this list. (Empty now: pool.memory_budget,
// the last, has landed.)
//
// Keys are app keys (they apply under apps.NAME and under defaults) or, for any other
// setting, its full path from the top of the file. Values say what to do instead.
var notYetSupported = map[string]string{}

// unsupported reports the setting at path if notYetSupported lists it under key.
func (d *decoder) unsupported(key, path string, n pair) {
	if how, ok := notYetSupported[key]; ok {
		d.errorf(n.k, path, "not supported by this version of sact yet; %s", how)
	}
}

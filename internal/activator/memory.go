package activator

// SetMemory records the running app's measured memory use in bytes (a sample of the
// runtime's backend.MemoryMeter). It shows in Status, and the pool's memory_budget counts
// an app without a memory limit by it. A sample that arrives after the app stopped is
// dropped: a stopped app uses nothing.
func (a *App) SetMemory(bytes int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inst == nil || bytes < 0 {
		return
	}
	a.memory.Store(bytes)
}

// Measured reports whether the app holds an instance whose memory is worth sampling:
// it runs or is paused (a frozen app keeps its memory).
func (a *App) Measured() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inst != nil && a.state != Stopping
}

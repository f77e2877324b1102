package config

import "strings"

// suggest returns the candidate that s is most likely a misspelling of, or "" if none is
// close. Case and - versus _ do not count; a swap of two neighbouring letters counts as
// one edit, so "imgae" finds "image".
func suggest(s string, candidates []string) string {
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "-", "_") }
	best, bestDist := "", 0
	for _, c := range candidates {
		dist := editDistance(norm(s), norm(c))
		if dist > max(1, min(3, len(c)/3)) {
			continue
		}
		if best == "" || dist < bestDist {
			best, bestDist = c, dist
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b: insertions,
// deletions, substitutions and transpositions of adjacent runes, each costing one.
func editDistance(a, b string) int {
	r, t := []rune(a), []rune(b)
	// d[i][j] is the distance between r[:i] and t[:j]; three rows are enough.
	prev2, prev, cur := make([]int, len(t)+1), make([]int, len(t)+1), make([]int, len(t)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(r); i++ {
		cur[0] = i
		for j := 1; j <= len(t); j++ {
			cost := 1
			if r[i-1] == t[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && r[i-1] == t[j-2] && r[i-2] == t[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(t)]
}

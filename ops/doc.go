// Package ops holds what operators run next to Jumpgate, not in it: the
// systemd unit, the rolling-upgrade script, Prometheus's scrape config and
// alert rules (prometheus/), and the Grafana dashboard (grafana/). It has no
// code; its tests check those files with promtool and against the metrics
// the processes export, so a renamed metric or a broken rule fails `go test`.
package ops

package main

import (
	"fmt"
	"strings"
	"text/template"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/prometheus/promql/parser"
)

// checkRules checks what the CRD types cannot: each rule's PromQL parses with Prometheus's own
// parser, a rule is exactly one of alert or record, and annotation templates parse as Go
// templates (Prometheus would fail them at evaluation time).
func checkRules(rule *monitoringv1.PrometheusRule) error {
	var problems []string
	for _, g := range rule.Spec.Groups {
		for i, r := range g.Rules {
			name := fmt.Sprintf("group %s rule %d (%s%s)", g.Name, i, r.Alert, r.Record)
			if (r.Alert == "") == (r.Record == "") {
				problems = append(problems, name+": needs exactly one of alert and record")
			}
			if _, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr.String()); err != nil {
				problems = append(problems, fmt.Sprintf("%s: expr: %v", name, err))
			}
			for k, v := range r.Annotations {
				// Prometheus's template functions, declared so the parse knows them.
				funcs := template.FuncMap{}
				for _, f := range []string{"humanize", "humanizePercentage", "humanizeDuration", "humanize1024", "humanizeTimestamp", "query", "first", "value", "label", "printf", "reReplaceAll", "title", "toUpper", "toLower", "match", "args", "safeHtml", "externalURL", "pathPrefix", "tableLink", "graphLink", "strvalue", "sortByLabel", "stripPort", "stripDomain", "parseDuration", "toTime", "toDuration", "now"} {
					funcs[f] = func(...any) any { return nil }
				}
				if _, err := template.New(k).Funcs(funcs).Parse("{{$labels := .Labels}}{{$value := .Value}}" + v); err != nil {
					problems = append(problems, fmt.Sprintf("%s: annotation %s: %v", name, k, err))
				}
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

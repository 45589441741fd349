package main

// Tests of the derper chart's rendered objects, typed: what each value set must produce beyond
// being valid Kubernetes (strictness is main.go's job). Run by tests/deploy.sh with
//
//	HELM=.../helm CHART=.../helm/derper [DERPER_BIN=.../derper] go test ./...
//
// With DERPER_BIN, every rendered per-pod config file is also loaded by the real relay
// (`derper --print-config --config-file`), whose parser refuses unknown keys.

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/yaml"
)

// rendered is one `helm template` output, decoded.
type rendered struct {
	objects []runtime.Object
}

func render(t *testing.T, valueFiles ...string) rendered {
	t.Helper()
	return renderWith(t, valueFiles, nil)
}

// renderWith renders with value files from the chart's ci/ directory and --set expressions.
func renderWith(t *testing.T, valueFiles []string, sets []string) rendered {
	t.Helper()
	helm, chart := os.Getenv("HELM"), os.Getenv("CHART")
	if helm == "" || chart == "" {
		t.Fatal("HELM and CHART must be set (tests/deploy.sh sets them)")
	}
	kube := os.Getenv("KUBE_VERSION")
	if kube == "" {
		kube = "v1.37.2"
	}
	args := []string{"template", "derp", chart, "--namespace", "derp", "--kube-version", kube}
	for _, f := range valueFiles {
		args = append(args, "-f", filepath.Join(chart, "ci", f))
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, err := exec.Command(helm, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	docs, err := readDocuments("helm template", bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	var r rendered
	for _, d := range docs {
		js, err := yaml.YAMLToJSONStrict(d.yaml)
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := decoder.Decode(js, nil, nil)
		if err != nil {
			t.Fatalf("document %d: %v", d.index, err)
		}
		r.objects = append(r.objects, obj)
	}
	return r
}

func (r rendered) statefulSet(t *testing.T) *appsv1.StatefulSet {
	t.Helper()
	for _, o := range r.objects {
		if s, ok := o.(*appsv1.StatefulSet); ok {
			return s
		}
	}
	t.Fatal("no StatefulSet rendered")
	return nil
}

func (r rendered) services() (headless []*corev1.Service, lb []*corev1.Service) {
	for _, o := range r.objects {
		if s, ok := o.(*corev1.Service); ok {
			if s.Spec.ClusterIP == corev1.ClusterIPNone {
				headless = append(headless, s)
			} else {
				lb = append(lb, s)
			}
		}
	}
	return
}

func (r rendered) configMap(t *testing.T, suffix string) *corev1.ConfigMap {
	t.Helper()
	for _, o := range r.objects {
		if c, ok := o.(*corev1.ConfigMap); ok && strings.HasSuffix(c.Name, suffix) {
			return c
		}
	}
	t.Fatalf("no ConfigMap *%s rendered", suffix)
	return nil
}

func has[T any](r rendered) bool {
	for _, o := range r.objects {
		if _, ok := o.(T); ok {
			return true
		}
	}
	return false
}

func derper(s *appsv1.StatefulSet) corev1.Container {
	return s.Spec.Template.Spec.Containers[0]
}

// derpMap is the subset of tailcfg.DERPMap the chart writes (tests/go checks it with
// Tailscale's own type).
type derpMap struct {
	Regions map[string]struct {
		RegionID int
		Nodes    []struct {
			Name, HostName, IPv4, IPv6 string
			RegionID, DERPPort         int
		}
	}
}

func TestDefaultsAreRestrictedAndDrainAware(t *testing.T) {
	r := render(t)
	s := r.statefulSet(t)
	pod := s.Spec.Template.Spec
	c := derper(s)

	if *s.Spec.Replicas != 2 || s.Spec.ServiceName != "derp-derper-mesh" {
		t.Errorf("replicas %d serviceName %q", *s.Spec.Replicas, s.Spec.ServiceName)
	}
	// Drain: Kubernetes waits the whole --drain-grace plus a margin.
	if got := *pod.TerminationGracePeriodSeconds; got != 45 {
		t.Errorf("terminationGracePeriodSeconds = %d, want 30 (drain) + 15", got)
	}
	if !contains(c.Args, "--drain-grace=30s") || !contains(c.Args, "--config-file=/etc/derper/config/$(POD_NAME).toml") {
		t.Errorf("args %v", c.Args)
	}
	// Probes on the metrics listener.
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		c.ReadinessProbe.HTTPGet.Port.StrVal != "metrics" {
		t.Errorf("probes: readiness %+v liveness %+v", c.ReadinessProbe.HTTPGet, c.LivenessProbe.HTTPGet)
	}
	// Restricted: non-root, read-only root, no capabilities, no escalation, seccomp.
	psc, csc := pod.SecurityContext, c.SecurityContext
	if !*psc.RunAsNonRoot || *psc.RunAsUser == 0 || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v", psc)
	}
	if !*csc.ReadOnlyRootFilesystem || *csc.AllowPrivilegeEscalation || len(csc.Capabilities.Drop) != 1 ||
		csc.Capabilities.Drop[0] != "ALL" || len(csc.Capabilities.Add) != 0 {
		t.Errorf("container securityContext %+v", csc)
	}
	// Privileged ports without a capability: the namespaced sysctl.
	if len(psc.Sysctls) != 1 || psc.Sysctls[0].Name != "net.ipv4.ip_unprivileged_port_start" || psc.Sysctls[0].Value != "0" {
		t.Errorf("sysctls %+v", psc.Sysctls)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the relay needs no API token")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Error("resource requests missing")
	}
	// Key and ACME cache on a PVC per replica.
	if len(s.Spec.VolumeClaimTemplates) != 1 || s.Spec.VolumeClaimTemplates[0].Name != "data" {
		t.Errorf("volumeClaimTemplates %+v", s.Spec.VolumeClaimTemplates)
	}
	// The TLS Secret is mounted under each node's name.
	for _, v := range pod.Volumes {
		if v.Name == "tls" {
			paths := []string{}
			for _, it := range v.Secret.Items {
				paths = append(paths, it.Path)
			}
			want := "derp-0.example.com.crt derp-0.example.com.key derp-1.example.com.crt derp-1.example.com.key"
			if strings.Join(paths, " ") != want {
				t.Errorf("tls items %v", paths)
			}
		}
	}

	headless, lbs := r.services()
	if len(headless) != 1 || headless[0].Spec.PublishNotReadyAddresses {
		t.Fatalf("headless Service: %d, must not publish not-ready relays", len(headless))
	}
	if p := headless[0].Spec.IPFamilyPolicy; p == nil || *p != corev1.IPFamilyPolicySingleStack {
		t.Error("the mesh Service must name each relay once (single stack)")
	}
	if len(lbs) != 2 {
		t.Fatalf("%d LoadBalancer Services, want one per replica", len(lbs))
	}
	for i, svc := range lbs {
		if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("%s: type %s policy %s", svc.Name, svc.Spec.Type, svc.Spec.ExternalTrafficPolicy)
		}
		if svc.Spec.Selector["statefulset.kubernetes.io/pod-name"] != "derp-derper-"+string(rune('0'+i)) {
			t.Errorf("%s selects %v", svc.Name, svc.Spec.Selector)
		}
		protos := map[string]corev1.Protocol{}
		for _, p := range svc.Spec.Ports {
			protos[p.Name] = p.Protocol
		}
		if protos["stun"] != corev1.ProtocolUDP || protos["https"] != corev1.ProtocolTCP || protos["http"] != corev1.ProtocolTCP {
			t.Errorf("%s ports %v: STUN must be UDP", svc.Name, protos)
		}
	}
	if !has[*corev1.Secret](r) {
		t.Error("no generated mesh key Secret")
	}
	for _, o := range r.objects {
		if sec, ok := o.(*corev1.Secret); ok {
			if len(sec.Data["key"]) != 64 || sec.Annotations["helm.sh/resource-policy"] != "keep" {
				t.Errorf("mesh key secret: %d bytes, annotations %v", len(sec.Data["key"]), sec.Annotations)
			}
		}
	}
	if !has[*certmanagerv1.Certificate](r) {
		t.Error("tls.mode=certManager renders no Certificate")
	}
	if has[*monitoringv1.ServiceMonitor](r) || has[*batchv1.Job](r) {
		t.Error("optional objects rendered by default")
	}
	checkConfigs(t, r, 2)
}

// TestOnlyRelaysCarrySelectorLabels: the headless Service (mesh membership), the per-node
// Services, the PDB and the NetworkPolicy select by the relays' labels; the test pod and the
// load-test Job's pods must not match, or a probe pod would become a mesh peer.
func TestOnlyRelaysCarrySelectorLabels(t *testing.T) {
	r := render(t, "loadtest.yaml")
	selector := r.statefulSet(t).Spec.Selector.MatchLabels
	matches := func(labels map[string]string) bool {
		for k, v := range selector {
			if labels[k] != v {
				return false
			}
		}
		return true
	}
	pods := 0
	for _, o := range r.objects {
		switch v := o.(type) {
		case *corev1.Pod:
			pods++
			if matches(v.Labels) {
				t.Errorf("pod %s matches the relay selector %v", v.Name, selector)
			}
		case *batchv1.Job:
			pods++
			if matches(v.Spec.Template.Labels) || matches(v.Labels) {
				t.Errorf("job %s matches the relay selector %v", v.Name, selector)
			}
		}
	}
	if pods != 2 {
		t.Errorf("%d non-relay workloads rendered, want the test pod and the Job", pods)
	}
}

func TestHostNetworkBindsNodePortsWithOneCapability(t *testing.T) {
	r := render(t, "host-network.yaml")
	s := r.statefulSet(t)
	pod := s.Spec.Template.Spec
	c := derper(s)
	if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork %v dnsPolicy %s", pod.HostNetwork, pod.DNSPolicy)
	}
	if pod.Affinity == nil || len(pod.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Error("host-network relays need one node each")
	}
	if _, lbs := r.services(); len(lbs) != 0 {
		t.Errorf("%d LoadBalancer Services in hostNetwork mode", len(lbs))
	}
	if len(pod.SecurityContext.Sysctls) != 0 {
		t.Error("namespaced sysctls are refused with hostNetwork")
	}
	csc := c.SecurityContext
	if len(csc.Capabilities.Add) != 1 || csc.Capabilities.Add[0] != "NET_BIND_SERVICE" || csc.Capabilities.Drop[0] != "ALL" ||
		!*csc.ReadOnlyRootFilesystem || *csc.AllowPrivilegeEscalation {
		t.Errorf("securityContext %+v", csc)
	}
	for _, p := range c.Ports {
		if p.Name != "metrics" && p.HostPort != p.ContainerPort {
			t.Errorf("port %s hostPort %d", p.Name, p.HostPort)
		}
	}
	checkConfigs(t, r, 2)

	r = render(t, "host-network-unprivileged.yaml")
	csc = derper(r.statefulSet(t)).SecurityContext
	if len(csc.Capabilities.Add) != 0 || csc.RunAsUser != nil {
		t.Errorf("unprivileged host network adds %v, runAsUser %v", csc.Capabilities.Add, csc.RunAsUser)
	}
	var m derpMap
	if err := json.Unmarshal([]byte(r.configMap(t, "-derpmap").Data["derpmap.json"]), &m); err != nil {
		t.Fatal(err)
	}
	if m.Regions["900"].Nodes[0].DERPPort != 8443 {
		t.Errorf("DERP map does not publish DERPPort 8443: %+v", m)
	}
	checkConfigs(t, r, 2)
}

func TestLoadBalancerPerReplicaDualStack(t *testing.T) {
	r := render(t, "loadbalancer.yaml")
	_, lbs := r.services()
	if len(lbs) != 2 {
		t.Fatalf("%d LoadBalancer Services", len(lbs))
	}
	for _, svc := range lbs {
		if svc.Spec.IPFamilyPolicy == nil || *svc.Spec.IPFamilyPolicy != corev1.IPFamilyPolicyRequireDualStack || len(svc.Spec.IPFamilies) != 2 {
			t.Errorf("%s: dual-stack settings %v %v", svc.Name, svc.Spec.IPFamilyPolicy, svc.Spec.IPFamilies)
		}
		if svc.Spec.LoadBalancerClass == nil || svc.Annotations["service.beta.kubernetes.io/aws-load-balancer-type"] != "external" {
			t.Errorf("%s: class/annotations missing", svc.Name)
		}
	}
	if lbs[0].Annotations["service.beta.kubernetes.io/aws-load-balancer-eip-allocations"] != "eipalloc-0" ||
		lbs[1].Annotations["service.beta.kubernetes.io/aws-load-balancer-eip-allocations"] != "" {
		t.Error("per-node annotations go on that node's Service only")
	}
	var m derpMap
	if err := json.Unmarshal([]byte(r.configMap(t, "-derpmap").Data["derpmap.json"]), &m); err != nil {
		t.Fatal(err)
	}
	n := m.Regions["900"].Nodes
	if len(n) != 2 || n[0].Name != "900a" || n[1].Name != "900b" || n[1].IPv6 != "2001:db8::11" || n[0].HostName != "derp-0.fra.example.com" {
		t.Errorf("DERP map nodes %+v", n)
	}
	checkConfigs(t, r, 2)
}

func TestCertManagerAndMonitoring(t *testing.T) {
	r := render(t, "cert-manager.yaml")
	var cert *certmanagerv1.Certificate
	var rule *monitoringv1.PrometheusRule
	var sm *monitoringv1.ServiceMonitor
	for _, o := range r.objects {
		switch v := o.(type) {
		case *certmanagerv1.Certificate:
			cert = v
		case *monitoringv1.PrometheusRule:
			rule = v
		case *monitoringv1.ServiceMonitor:
			sm = v
		}
	}
	if cert == nil || strings.Join(cert.Spec.DNSNames, ",") != "derp-0.example.com,derp-1.example.com" ||
		cert.Spec.IssuerRef.Name != "letsencrypt-prod" || cert.Spec.SecretName != "derp-derper-tls" {
		t.Errorf("certificate %+v", cert)
	}
	if rule == nil || len(rule.Spec.Groups) < 2 {
		t.Fatal("PrometheusRule missing its groups")
	}
	alerts := 0
	for _, g := range rule.Spec.Groups {
		for _, rl := range g.Rules {
			if rl.Alert != "" && rl.Expr.String() != "" {
				alerts++
			}
		}
	}
	if alerts < 10 {
		t.Errorf("only %d alerts", alerts)
	}
	if sm == nil || sm.Spec.Endpoints[0].Port != "metrics" || sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("servicemonitor %+v", sm)
	}
	// The ServiceMonitor selects exactly the headless Service (one target per pod).
	headless, _ := r.services()
	for k, v := range sm.Spec.Selector.MatchLabels {
		if headless[0].Labels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%s does not match the headless Service", k, v)
		}
	}
	dash := r.configMap(t, "-dashboard").Data["derp-relays.json"]
	var d struct {
		Panels []json.RawMessage
	}
	if err := json.Unmarshal([]byte(dash), &d); err != nil || len(d.Panels) < 8 {
		t.Errorf("dashboard: %v, %d panels", err, len(d.Panels))
	}
}

func TestThreeReplicasExistingSecrets(t *testing.T) {
	r := render(t, "three-replicas.yaml")
	s := r.statefulSet(t)
	if *s.Spec.Replicas != 3 {
		t.Errorf("replicas %d", *s.Spec.Replicas)
	}
	if has[*corev1.Secret](r) || has[*certmanagerv1.Certificate](r) {
		t.Error("existing mesh key and TLS secret: nothing to generate")
	}
	for _, v := range s.Spec.Template.Spec.Volumes {
		if v.Name == "mesh-key" && v.Secret.SecretName != "derp-mesh-key" || v.Name == "tls" && v.Secret.SecretName != "derp-ams-tls" {
			t.Errorf("volume %s uses %s", v.Name, v.Secret.SecretName)
		}
	}
	_, lbs := r.services()
	if len(lbs) != 3 {
		t.Errorf("%d LoadBalancer Services", len(lbs))
	}
	cfg := r.configMap(t, "-config").Data
	if len(cfg) != 3 {
		t.Fatalf("%d config files", len(cfg))
	}
	toml := cfg["derp-derper-2.toml"]
	for _, want := range []string{
		`hostname = "derp-2.ams.example.com"`,
		`name = "derp-derper-mesh.derp.svc.cluster.local."`,
		`peer_url = "https://derp.ams.example.com/derp"`,
		`psk_file = "/etc/derper/mesh/key"`,
	} {
		if !strings.Contains(toml, want) {
			t.Errorf("derp-derper-2.toml lacks %s:\n%s", want, toml)
		}
	}
	checkConfigs(t, r, 3)
}

func TestAdmissionAndRateConfig(t *testing.T) {
	r := render(t, "admission-rate.yaml")
	c := derper(r.statefulSet(t))
	if !contains(c.Args, "--rate-config=/etc/derper/rate/rate.json") {
		t.Errorf("args %v", c.Args)
	}
	var rate map[string]int64
	if err := json.Unmarshal([]byte(r.configMap(t, "-rate").Data["rate.json"]), &rate); err != nil {
		t.Fatal(err)
	}
	if len(rate) != 2 || rate["PerClientRateLimitBytesPerSec"] != 1250000 || rate["PerClientRateBurstBytes"] != 2500000 {
		t.Errorf("rate.json %v", rate)
	}
	// Reload without restart: the ConfigMap is a directory mount (a subPath mount never updates)
	// and the pod template does not change with the rate values.
	for _, m := range c.VolumeMounts {
		if m.Name == "rate" && (m.SubPath != "" || m.MountPath != "/etc/derper/rate") {
			t.Errorf("rate mount %+v", m)
		}
	}
	// reload=signal: a new rate leaves the pod template alone (no rollout), only the file changes.
	changed := renderWith(t, []string{"admission-rate.yaml"}, []string{"rateConfig.perClientRateLimitBytesPerSec=99"})
	if !reflect.DeepEqual(r.statefulSet(t).Spec.Template, changed.statefulSet(t).Spec.Template) {
		t.Error("reload=signal: changing the rate changed the pod template (pods would restart)")
	}
	if changed.configMap(t, "-rate").Data["rate.json"] == r.configMap(t, "-rate").Data["rate.json"] {
		t.Error("the rate ConfigMap did not change")
	}
	toml := r.configMap(t, "-config").Data["derp-derper-0.toml"]
	for _, want := range []string{
		"[admission]",
		`verify_client_url = "http://headscale.headscale.svc.cluster.local:8080/verify"`,
		"fail_open = false",
		`bearer_token_file = "/etc/derper/admission/token"`,
		"accept_connection_limit = 200.5",
		"accept_connection_burst = 400",
	} {
		if !strings.Contains(toml, want) {
			t.Errorf("config lacks %s:\n%s", want, toml)
		}
	}
	checkConfigs(t, r, 2)

	// reload=rollout: a new rate changes the pod template, so the pods roll (draining).
	r = render(t, "acme.yaml")
	changed = renderWith(t, []string{"acme.yaml"}, []string{"rateConfig.perClientRateLimitBytesPerSec=99"})
	if reflect.DeepEqual(r.statefulSet(t).Spec.Template, changed.statefulSet(t).Spec.Template) {
		t.Error("reload=rollout: changing the rate left the pod template unchanged")
	}
	toml = r.configMap(t, "-config").Data["derp-derper-0.toml"]
	for _, want := range []string{
		`certmode = "letsencrypt"`,
		`certdir = "/var/lib/derper/acme"`,
		`acme_directory = "https://acme-v02.api.letsencrypt.org/directory"`,
		`acme_email = "ops@example.com"`,
	} {
		if !strings.Contains(toml, want) {
			t.Errorf("acme config lacks %s:\n%s", want, toml)
		}
	}
	checkConfigs(t, r, 1)
}

func TestLoadtestIndexedJob(t *testing.T) {
	r := render(t, "loadtest.yaml")
	var job *batchv1.Job
	for _, o := range r.objects {
		if j, ok := o.(*batchv1.Job); ok {
			job = j
		}
	}
	if job == nil {
		t.Fatal("no Job")
	}
	if *job.Spec.CompletionMode != batchv1.IndexedCompletion || *job.Spec.Completions != 4 || *job.Spec.Parallelism != 4 || *job.Spec.BackoffLimit != 0 {
		t.Errorf("job spec %+v", job.Spec)
	}
	c := job.Spec.Template.Spec.Containers[0]
	if c.Env[0].Name != "LOADTEST_SHARDS" || c.Env[0].Value != "4" || !contains(c.Args, "--url=https://derp-0.example.com/derp") || !contains(c.Args, "--pairs=40000") {
		t.Errorf("container %v %v", c.Env, c.Args)
	}
}

// checkConfigs loads each rendered per-pod config file with the real relay's parser, when
// DERPER_BIN is set.
func checkConfigs(t *testing.T, r rendered, want int) {
	t.Helper()
	cfg := r.configMap(t, "-config").Data
	if len(cfg) != want {
		t.Fatalf("%d config files, want %d", len(cfg), want)
	}
	bin := os.Getenv("DERPER_BIN")
	if bin == "" {
		return
	}
	dir := t.TempDir()
	for name, text := range cfg {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "--print-config", "--config-file", path).CombinedOutput()
		if err != nil {
			t.Errorf("derper refuses %s: %v\n%s\n--- file:\n%s", name, err, out, text)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

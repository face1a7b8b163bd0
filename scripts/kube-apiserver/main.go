// Command kube-apiserver is a small Kubernetes API server for Herald's tests and
// local environment. It is built by scripts/test-deps from Debian's packaged
// sources of k8s.io/apiextensions-apiserver and is NOT a full kube-apiserver:
// it serves apiextensions.k8s.io (CustomResourceDefinitions) and the custom
// resources they define, nothing else (no namespaces, Events, Leases, Services,
// RBAC; /api/v1 exists but lists no resources, and requests for core resources
// get a 404 NotFound Status). Custom resources can be created in any namespace.
//
// Differences from the upstream apiextensions-apiserver command:
//   - every request is authenticated as user "admin" in group system:masters
//     (no client certificate or token needed) and every request is authorized;
//   - no admission plugins and no core/v1 informers (they need a real
//     kube-apiserver behind this one); API priority-and-fairness is off;
//   - root discovery (/apis, /api and the aggregated form) is served, including
//     the groups of established CRDs, as kube-apiserver's aggregator would;
//   - OpenAPI v2 and v3 are published, including CRD schemas.
//
// Flags (both -flag and --flag spellings work, values as "--flag=v" or "--flag v"):
//
//	--etcd-servers URLS   comma-separated etcd client URLs (required), e.g. http://127.0.0.1:2379
//	--etcd-prefix PATH    key prefix in etcd (default /registry); distinct prefixes let
//	                      several servers share one etcd without seeing each other's data
//	--bind-address IP     address to listen on (default 127.0.0.1)
//	--secure-port PORT    HTTPS port (default 6443); 0 picks a free port, see --port-file
//	--port-file PATH      write the port actually bound to this file (atomically), useful
//	                      with --secure-port 0
//	--cert-dir DIR        where the self-signed serving certificate is written as
//	                      apiserver.crt / apiserver.key (reused when present). The .crt
//	                      holds the serving certificate followed by its CA, so it can be
//	                      used as the client's certificate-authority. Without --cert-dir
//	                      the certificate only lives in memory (clients must skip TLS
//	                      verification). The certificate is valid for 127.0.0.1 and localhost.
//	--v N                 klog verbosity (default 0); other klog flags are accepted too
//
// Readiness: GET https://<bind-address>:<port>/readyz returns 200 "ok" once etcd is
// reachable and the CRD informers have synced.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	noopoteltrace "go.opentelemetry.io/otel/trace/noop"

	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	"k8s.io/apiextensions-apiserver/pkg/apihelpers"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1beta1"
	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	crdoptions "k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	generatedopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/apiserver/pkg/endpoints/discovery"
	discoveryaggregated "k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	netutils "k8s.io/utils/net"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "kube-apiserver: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	klog.InitFlags(nil)
	etcdServers := flag.String("etcd-servers", "", "comma-separated etcd client URLs (required)")
	etcdPrefix := flag.String("etcd-prefix", "/registry", "key prefix in etcd")
	bindAddress := flag.String("bind-address", "127.0.0.1", "address to listen on")
	securePort := flag.Int("secure-port", 6443, "HTTPS port; 0 picks a free port")
	portFile := flag.String("port-file", "", "write the bound port to this file")
	certDir := flag.String("cert-dir", "", "directory for the generated serving certificate (apiserver.crt/.key)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}
	if *etcdServers == "" {
		return errors.New("--etcd-servers is required")
	}
	bindIP := netutils.ParseIPSloppy(*bindAddress)
	if bindIP == nil {
		return fmt.Errorf("--bind-address %q is not an IP address", *bindAddress)
	}

	ctx := genericapiserver.SetupSignalContext()

	runOpts := genericoptions.NewServerRunOptions()
	if err := runOpts.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	if err := runOpts.Complete(); err != nil {
		return err
	}

	// Only the parts of the recommended options that do not need a core
	// Kubernetes API behind us.
	opts := genericoptions.NewRecommendedOptions(*etcdPrefix,
		apiserver.Codecs.LegacyCodec(v1beta1.SchemeGroupVersion, apiextensionsv1.SchemeGroupVersion))
	opts.Authentication = nil // replaced below: everyone is admin
	opts.Authorization = nil  // replaced below: always allow
	opts.CoreAPI = nil        // no core/v1 informers
	opts.Admission = nil      // no admission plugins
	opts.Audit = nil
	opts.EgressSelector = nil
	opts.Traces = nil
	opts.Features.EnablePriorityAndFairness = false
	opts.Etcd.StorageConfig.Transport.ServerList = strings.Split(*etcdServers, ",")

	opts.SecureServing.BindAddress = bindIP
	opts.SecureServing.BindPort = *securePort
	if *securePort == 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(bindIP.String(), "0"))
		if err != nil {
			return err
		}
		opts.SecureServing.Listener = ln
		opts.SecureServing.BindPort = ln.Addr().(*net.TCPAddr).Port
	}
	// Upstream's default is a folder relative to the working directory; without
	// --cert-dir we keep the certificate in memory instead.
	opts.SecureServing.ServerCert.CertDirectory = *certDir
	opts.SecureServing.ServerCert.PairName = "apiserver"
	// Valid for localhost and the bind address (plus 127.0.0.1 when binding elsewhere).
	var extraIPs []net.IP
	if loopback := netutils.ParseIPSloppy("127.0.0.1"); !bindIP.Equal(loopback) {
		extraIPs = append(extraIPs, loopback)
	}
	if err := opts.SecureServing.MaybeDefaultWithSelfSignedCerts("localhost", nil, extraIPs); err != nil {
		return fmt.Errorf("creating self-signed certificate: %w", err)
	}
	if errs := opts.Etcd.Validate(); len(errs) > 0 {
		return errors.Join(errs...)
	}
	if errs := opts.SecureServing.Validate(); len(errs) > 0 {
		return errors.Join(errs...)
	}

	serverConfig := genericapiserver.NewRecommendedConfig(apiserver.Codecs)
	if err := runOpts.ApplyTo(&serverConfig.Config); err != nil {
		return err
	}
	if err := opts.ApplyTo(serverConfig); err != nil {
		return err
	}
	if err := genericoptions.NewAPIEnablementOptions().ApplyTo(&serverConfig.Config,
		apiserver.DefaultAPIResourceConfigSource(), apiserver.Scheme); err != nil {
		return err
	}

	serverConfig.Authentication.Authenticator = authenticator.RequestFunc(func(*http.Request) (*authenticator.Response, bool, error) {
		return &authenticator.Response{User: &user.DefaultInfo{
			Name:   "admin",
			Groups: []string{user.SystemPrivilegedGroup, user.AllAuthenticated},
		}}, true, nil
	})
	serverConfig.Authorization.Authorizer = authorizerfactory.NewAlwaysAllowAuthorizer()
	serverConfig.AdmissionControl = admission.NewChainHandler()
	serverConfig.ExternalAddress = net.JoinHostPort(bindIP.String(), strconv.Itoa(opts.SecureServing.BindPort))

	getDefinitions := openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(generatedopenapi.GetOpenAPIDefinitions)
	namer := openapinamer.NewDefinitionNamer(apiserver.Scheme, scheme.Scheme)
	serverConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(getDefinitions, namer)
	serverConfig.OpenAPIConfig.Info.Title = "Kubernetes"
	serverConfig.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(getDefinitions, namer)
	serverConfig.OpenAPIV3Config.Info.Title = "Kubernetes"

	config := &apiserver.Config{
		GenericConfig: serverConfig,
		ExtraConfig: apiserver.ExtraConfig{
			CRDRESTOptionsGetter: crdoptions.NewCRDRESTOptionsGetter(*opts.Etcd, serverConfig.ResourceTransformers, serverConfig.StorageObjectCountTracker),
			MasterCount:          1,
			ServiceResolver:      noServices{},
			AuthResolverWrapper:  webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil, serverConfig.LoopbackClientConfig, noopoteltrace.NewTracerProvider()),
		},
	}

	completed := config.Complete()
	// Upstream switches root discovery off (kube-apiserver's aggregator serves
	// it); we are alone, so serve it.
	completed.GenericConfig.EnableDiscovery = true
	server, err := completed.New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	generic := server.GenericAPIServer

	// /apis (unaggregated form) must list the groups of established CRDs.
	groups := &crdGroups{manager: generic.DiscoveryGroupManager, known: map[string]bool{}}
	crdInformer := server.Informers.Apiextensions().V1().CustomResourceDefinitions()
	lister := crdInformer.Lister()
	resync := func(any) { groups.sync(lister.List) }
	if _, err := crdInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    resync,
		UpdateFunc: func(_, obj any) { resync(obj) },
		DeleteFunc: resync,
	}); err != nil {
		return err
	}

	// /api and /api/v1: core v1 exists but has no resources, so that clients
	// that always discover the core group (kubectl, kube-rs Discovery) work.
	coreV1 := schema.GroupVersion{Version: "v1"}
	generic.AggregatedLegacyDiscoveryGroupManager.AddGroupVersion("", apidiscoveryv2.APIVersionDiscovery{
		Version:   "v1",
		Freshness: apidiscoveryv2.DiscoveryFreshnessCurrent,
		Resources: []apidiscoveryv2.APIResourceDiscovery{},
	})
	legacyRoot := discovery.NewLegacyRootAPIHandler(completed.GenericConfig.DiscoveryAddresses, apiserver.Codecs, "/api")
	generic.Handler.NonGoRestfulMux.Handle("/api",
		discoveryaggregated.WrapAggregatedDiscoveryToHandler(legacyRoot, generic.AggregatedLegacyDiscoveryGroupManager, nil))
	generic.Handler.NonGoRestfulMux.Handle("/api/v1", discovery.NewAPIVersionHandler(apiserver.Codecs, coreV1,
		discovery.APIResourceListerFunc(func() []metav1.APIResource { return []metav1.APIResource{} })))
	// Any core/v1 resource: a NotFound Status, as kube-apiserver answers for unknown resources.
	generic.Handler.NonGoRestfulMux.HandlePrefix("/api/v1/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		notFound := apierrors.NewGenericServerResponse(http.StatusNotFound, "", schema.GroupResource{}, "", "", 0, false)
		responsewriters.ErrorNegotiated(notFound, apiserver.Codecs, coreV1, w, req)
	}))

	prepared := generic.PrepareRun()
	if *portFile != "" {
		if err := writeFileAtomic(*portFile, strconv.Itoa(opts.SecureServing.BindPort)+"\n"); err != nil {
			return err
		}
	}
	klog.Infof("serving on https://%s", serverConfig.ExternalAddress)
	return prepared.RunWithContext(ctx)
}

// crdGroups keeps the unaggregated /apis list in step with the CRDs: a group
// is listed while at least one established CRD serves a version of it.
type crdGroups struct {
	mu      sync.Mutex
	manager discovery.GroupManager
	known   map[string]bool
}

func (g *crdGroups) sync(list func(labels.Selector) ([]*apiextensionsv1.CustomResourceDefinition, error)) {
	crds, err := list(labels.Everything())
	if err != nil {
		klog.Errorf("listing CRDs for discovery: %v", err)
		return
	}
	versions := map[string][]string{}
	for _, crd := range crds {
		if !apihelpers.IsCRDConditionTrue(crd, apiextensionsv1.Established) {
			continue
		}
		for _, v := range crd.Spec.Versions {
			if v.Served && !contains(versions[crd.Spec.Group], v.Name) {
				versions[crd.Spec.Group] = append(versions[crd.Spec.Group], v.Name)
			}
		}
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	for name := range g.known {
		if len(versions[name]) == 0 {
			g.manager.RemoveGroup(name)
			delete(g.known, name)
		}
	}
	for name, vs := range versions {
		if len(vs) == 0 {
			continue
		}
		sort.Slice(vs, func(i, j int) bool { return version.CompareKubeAwareVersionStrings(vs[i], vs[j]) > 0 })
		group := metav1.APIGroup{Name: name}
		for _, v := range vs {
			group.Versions = append(group.Versions, metav1.GroupVersionForDiscovery{GroupVersion: name + "/" + v, Version: v})
		}
		group.PreferredVersion = group.Versions[0]
		g.manager.AddGroup(group)
		g.known[name] = true
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// noServices is the webhook service resolver: there are no Services here, so
// conversion webhooks can only be given by URL.
type noServices struct{}

func (noServices) ResolveEndpoint(namespace, name string, port int32) (*url.URL, error) {
	return nil, fmt.Errorf("cannot resolve service %s/%s: this API server has no core/v1 Services", namespace, name)
}

func writeFileAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".port-*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

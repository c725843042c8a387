# shellcheck shell=bash
# The `auth` group of the real-client suite (sourced by run.sh; berth only): access control as a
# user meets it. Two berth servers over TLS, with a CA made here: one with basic auth and one
# with berth's own token service (the Docker token flow). Users are created with `berth user
# add`; a policy gives alice everything under team/, public/ and private/, bob pull on team/,
# carol push on carol/ only, and anonymous callers pull on public/. docker, podman, skopeo and
# curl then try what each may and may not do.

AU=$WORK/auth
# docker trusts a registry's CA only from this directory (per HOST:PORT); what we add is removed
# at the end of the group.
DOCKER_CERTS=/etc/docker/certs.d

auth_port() { cat "$AU/$1.port"; }
pw() { echo "pw-$1-secret"; }
curl_tls() { t curl -sS --max-time 60 --cacert "$AU/ca.crt" "$@"; }

auth_setup() {
    mkdir -p "$AU/certs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=berth e2e CA" \
        -keyout "$AU/ca.key" -out "$AU/ca.crt" 2>&1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$AU/server.key" -out "$AU/server.csr" 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$AU/ext.cnf"
    openssl x509 -req -in "$AU/server.csr" -CA "$AU/ca.crt" -CAkey "$AU/ca.key" -CAcreateserial -days 2 \
        -extfile "$AU/ext.cnf" -out "$AU/server.crt" 2>&1
    cp "$AU/ca.crt" "$AU/certs/ca.crt"
    local u
    for u in alice bob carol; do
        pw "$u" | t "$BERTH_BIN" user add "$u" --password-stdin --file "$AU/htpasswd"
    done
    t "$BERTH_BIN" user list --file "$AU/htpasswd" | tee "$AU/users.out"
    assert_eq "$(sort "$AU/users.out" | tr '\n' ' ')" "alice bob carol " "berth user list shows the three users"
    local mode port
    for mode in basic token; do
        port=$(free_port)
        echo "$port" >"$AU/$mode.port"
        cat >"$AU/$mode.yaml" <<EOF
data_dir: $AU/$mode-data
http:
  addr: 127.0.0.1:$port
  tls:
    certificate: $AU/server.crt
    key: $AU/server.key
auth:
  mode: $mode
  htpasswd: $AU/htpasswd
  rules:
    - repositories: "team/**"
      users: [alice]
      actions: [pull, push, delete]
    - repositories: "team/**"
      users: [bob]
      actions: [pull]
    - repositories: "public/**"
      anonymous: true
      actions: [pull]
    - repositories: "public/**"
      users: [alice]
      actions: [push]
    - repositories: "private/**"
      users: [alice]
      actions: [pull, push]
    - repositories: "carol/**"
      users: [carol]
      actions: [pull, push]
EOF
        t "$BERTH_BIN" config check "$AU/$mode.yaml"
        start_bg "berth-$mode" "$AU/$mode.log" env RUST_LOG=info NO_COLOR=1 "$BERTH_BIN" serve --config "$AU/$mode.yaml"
        wait_until 30 "$LAST_PID" "berth ($mode) on $port" \
            curl -sS --cacert "$AU/ca.crt" -o /dev/null "https://127.0.0.1:$port/v2/"
        mkdir -p "$DOCKER_CERTS/127.0.0.1:$port"
        cp "$AU/ca.crt" "$DOCKER_CERTS/127.0.0.1:$port/ca.crt"
        echo "$DOCKER_CERTS/127.0.0.1:$port" >>"$AU/docker-certs.dirs"
    done
}

# The challenge each mode answers an anonymous GET /v2/ with.
auth_challenges() {
    local code
    code=$(curl_tls -o /dev/null -D "$AU/basic.h" -w '%{http_code}' "https://127.0.0.1:$(auth_port basic)/v2/")
    assert_eq "$code" 401 "basic mode: anonymous GET /v2/ answers 401"
    assert_grep "$AU/basic.h" '^[Ww]ww-[Aa]uthenticate: Basic realm=' "basic mode: Basic challenge"
    code=$(curl_tls -o /dev/null -D "$AU/token.h" -w '%{http_code}' "https://127.0.0.1:$(auth_port token)/v2/")
    assert_eq "$code" 401 "token mode: anonymous GET /v2/ answers 401"
    assert_grep "$AU/token.h" "^[Ww]ww-[Aa]uthenticate: Bearer realm=\"https://127.0.0.1:$(auth_port token)/auth/token\",service=\"berth\"" \
        "token mode: Bearer challenge naming the token endpoint"
    # Plain HTTP to the TLS port gets no API answer.
    ! curl -sS --max-time 10 -o /dev/null "http://127.0.0.1:$(auth_port token)/v2/" 2>/dev/null
}

# docker_auth MODE: login, push, refusals and anonymous pulls with docker against one server.
docker_auth() {
    local mode=$1 r out
    r=127.0.0.1:$(auth_port "$mode")
    out=$AU/docker-$mode
    # A wrong password is refused.
    if echo "wrong" | docker_cli login "$r" -u alice --password-stdin >"$out.badlogin" 2>&1; then
        cat "$out.badlogin"
        echo "docker login with a wrong password succeeded"
        return 1
    fi
    cat "$out.badlogin"
    pw alice | docker_cli login "$r" -u alice --password-stdin | tee "$out.login"
    assert_grep "$out.login" "Login Succeeded" "docker login as alice ($mode)"
    local repo
    for repo in team/app public/app private/app; do
        docker_cli tag e2e/img:v1 "$r/$repo:1"
        docker_cli push "$r/$repo:1" | tee "$out.push"
        assert_grep "$out.push" "digest: sha256:" "alice pushes $repo ($mode)"
    done
    docker_cli logout "$r"
    pw bob | docker_cli login "$r" -u bob --password-stdin
    docker_cli tag e2e/img:v1 "$r/team/app:bob"
    if docker_cli push "$r/team/app:bob" >"$out.bobpush" 2>&1; then
        cat "$out.bobpush"
        echo "bob (pull only) could push"
        return 1
    fi
    cat "$out.bobpush"
    assert_grep "$out.bobpush" "denied|unauthorized|authentication required" "bob's push is refused ($mode)"
    docker_cli rmi "$r/team/app:1" "$r/team/app:bob" "$r/public/app:1" "$r/private/app:1" >/dev/null
    docker_cli pull "$r/team/app:1"
    assert_eq "$(docker_cli image inspect --format '{{.Id}}' "$r/team/app:1")" "$CFG_V1" "bob pulls team/app ($mode)"
    if docker_cli pull "$r/private/app:1" >"$out.bobpriv" 2>&1; then
        echo "bob could pull private/app"
        return 1
    fi
    cat "$out.bobpriv"
    docker_cli logout "$r"
    docker_cli rmi "$r/team/app:1" >/dev/null
    # Anonymous pulls with docker need the token flow: against a basic-auth registry docker
    # pings /v2/, gets the Basic challenge and, holding no credentials, gives up (skopeo and
    # curl pull anonymously in basic mode: see skopeo_auth).
    [ "$mode" = token ] || return 0
    # Anonymous: public/ pulls, team/ does not.
    docker_cli pull "$r/public/app:1"
    assert_eq "$(docker_cli image inspect --format '{{.Id}}' "$r/public/app:1")" "$CFG_V1" "anonymous pull of public/app ($mode)"
    docker_cli rmi "$r/public/app:1" >/dev/null
    if docker_cli pull "$r/team/app:1" >"$out.anon" 2>&1; then
        echo "an anonymous client could pull team/app"
        return 1
    fi
    cat "$out.anon"
    echo "ok: anonymous pull of team/app refused ($mode)"
}

# skopeo_auth MODE: --creds and --cert-dir; what bob may and may not do.
skopeo_auth() {
    local mode=$1 r
    r=127.0.0.1:$(auth_port "$mode")
    sk copy --all --preserve-digests --dest-cert-dir "$AU/certs" --dest-creds "alice:$(pw alice)" "oci:$L:multi" "docker://$r/team/multi:1"
    sk inspect --cert-dir "$AU/certs" --creds "bob:$(pw bob)" --raw "docker://$r/team/multi:1" >"$AU/sk-$mode.json"
    assert_eq "$(sha256_of "$AU/sk-$mode.json")" "$DIG_MULTI" "bob reads the index alice pushed, byte for byte ($mode)"
    if sk copy --dest-cert-dir "$AU/certs" --dest-creds "bob:$(pw bob)" "oci:$L:amd64" "docker://$r/team/bob:1" >"$AU/sk-bob-$mode.out" 2>&1; then
        echo "bob could push with skopeo"
        return 1
    fi
    cat "$AU/sk-bob-$mode.out"
    # The test CA is what makes the server trusted: without it the client refuses the server.
    # (An empty --cert-dir: containers/image would otherwise also read the CA this group put
    # under /etc/docker/certs.d for docker.)
    mkdir -p "$AU/no-certs"
    if sk inspect --cert-dir "$AU/no-certs" --creds "bob:$(pw bob)" --raw "docker://$r/team/multi:1" >"$AU/sk-noca-$mode.out" 2>&1; then
        echo "skopeo trusted the server without the test CA"
        return 1
    fi
    assert_grep "$AU/sk-noca-$mode.out" "x509|certificate" "without the CA the server's certificate is refused ($mode)"
    sk inspect --cert-dir "$AU/certs" --raw "docker://$r/public/app:1" >/dev/null
    echo "ok: anonymous skopeo inspect of public/app ($mode)"
    if sk inspect --cert-dir "$AU/certs" --creds "carol:wrong" --raw "docker://$r/carol/x:1" >/dev/null 2>&1; then
        echo "a wrong password was accepted"
        return 1
    fi
    echo "ok: wrong password refused ($mode)"
}

# A bearer token for USER (empty: anonymous) and SCOPES from the token endpoint.
token_for() {
    local user=$1 creds=() q="service=berth" s
    shift
    for s in "$@"; do q="$q&scope=$(jq -rn --arg s "$s" '$s|@uri')"; done
    [ -z "$user" ] || creds=(-u "$user:$(pw "$user")")
    curl_tls -f "${creds[@]}" "https://127.0.0.1:$(auth_port token)/auth/token?$q" | jq -r .token
}

# api MODE USER METHOD PATH [CURL ARGS...]: the status of an API request as USER (a token with
# the scopes docker would ask for in token mode: the path's repository, and a mount's source).
api() {
    local mode=$1 user=$2 method=$3 path=$4 auth=()
    shift 4
    if [ -n "$user" ] && [ "$mode" = basic ]; then
        auth=(-u "$user:$(pw "$user")")
    elif [ -n "$user" ]; then
        local scopes=()
        case "$path" in
            /v2/_catalog*) scopes=("registry:catalog:*") ;;
            *) scopes=("repository:$(echo "$path" | sed -E 's#^/v2/(.*)/(blobs|manifests|tags)/.*#\1#'):pull,push,delete") ;;
        esac
        case "$path" in
            *from=*) scopes+=("repository:${path##*from=}:pull") ;;
        esac
        auth=(-H "Authorization: Bearer $(token_for "$user" "${scopes[@]}")")
    fi
    curl_tls -o "$AU/api.out" -w '%{http_code}' -X "$method" "${auth[@]}" "$@" "https://127.0.0.1:$(auth_port "$mode")$path"
}

# The catalog lists only what the caller may pull; a mount needs pull on its source.
policy_filters() {
    local mode
    for mode in basic token; do
        assert_eq "$(api "$mode" bob GET /v2/_catalog)" 200 "bob lists the catalog ($mode)"
        cat "$AU/api.out"; echo
        assert_json "$AU/api.out" '(.repositories | index("team/app")) != null and (.repositories | index("private/app")) == null' \
            "bob's catalog has team/app and not private/app ($mode)"
        assert_eq "$(api "$mode" alice GET /v2/_catalog)" 200 "alice lists the catalog ($mode)"
        assert_json "$AU/api.out" '(.repositories | index("private/app")) != null' "alice's catalog has private/app ($mode)"
        local layer
        layer=$(curl_tls -u "alice:$(pw alice)" -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            "https://127.0.0.1:$(auth_port basic)/v2/team/app/manifests/1" | jq -r '.layers[0].digest')
        [ "$mode" = basic ] || layer=$(curl_tls -H "Authorization: Bearer $(token_for alice repository:team/app:pull)" \
            -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            "https://127.0.0.1:$(auth_port token)/v2/team/app/manifests/1" | jq -r '.layers[0].digest')
        # carol cannot pull private/: her mount becomes an ordinary upload (202), not a mount (201).
        assert_eq "$(api "$mode" carol POST "/v2/carol/x/blobs/uploads/?mount=$layer&from=private/app")" 202 \
            "carol's mount from private/app is an ordinary upload ($mode)"
        # public/ is readable by everyone, so the same mount from there succeeds.
        assert_eq "$(api "$mode" carol POST "/v2/carol/x/blobs/uploads/?mount=$layer&from=public/app")" 201 \
            "carol's mount from public/app mounts ($mode)"
        assert_eq "$(api "$mode" bob DELETE "/v2/team/app/manifests/$layer")" "$([ "$mode" = basic ] && echo 403 || echo 401)" \
            "bob may not delete in team/ ($mode)"
    done
}

# Tokens that must not be accepted.
forged_tokens() {
    local r b64 header payload
    r=https://127.0.0.1:$(auth_port token)
    b64() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
    payload=$(printf '{"iss":"berth","sub":"alice","aud":"berth","exp":%s,"nbf":0,"iat":0,"jti":"x","access":[{"type":"repository","name":"private/app","actions":["pull"]}]}' \
        "$(($(date +%s) + 600))" | b64)
    header=$(printf '{"alg":"none","typ":"JWT"}' | b64)
    assert_eq "$(curl_tls -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $header.$payload." "$r/v2/private/app/manifests/1")" 401 \
        "an alg:none token is refused"
    # Signed by another key.
    openssl ecparam -name prime256v1 -genkey -noout -out "$AU/other.key" 2>/dev/null
    header=$(printf '{"alg":"ES256","typ":"JWT"}' | b64)
    local sig
    sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$AU/other.key" | b64)
    assert_eq "$(curl_tls -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $header.$payload.$sig" "$r/v2/private/app/manifests/1")" 401 \
        "a token signed by another key is refused"
    # A real token for bob does not open private/.
    local tok
    tok=$(token_for bob repository:private/app:pull)
    assert_eq "$(curl_tls -o /dev/null -D "$AU/scope.h" -w '%{http_code}' -H "Authorization: Bearer $tok" "$r/v2/private/app/manifests/1")" 401 \
        "bob's token does not grant private/app"
    assert_grep "$AU/scope.h" 'error="insufficient_scope"' "the challenge says insufficient_scope"
}

# podman against the token server: login, push as alice, pull as bob.
podman_auth() {
    local r
    r=127.0.0.1:$(auth_port token)
    mkdir -p "$PM"
    podman_cli load -i "$IMG/docker-v1.tar"
    podman_cli tag e2e/img:v1 "$r/team/podman:1"
    pw alice | podman_cli login --cert-dir "$AU/certs" -u alice --password-stdin "$r"
    podman_cli push --cert-dir "$AU/certs" --digestfile "$AU/podman.digest" "$r/team/podman:1"
    podman_cli logout "$r"
    podman_cli rmi "$r/team/podman:1" >/dev/null
    pw bob | podman_cli login --cert-dir "$AU/certs" -u bob --password-stdin "$r"
    podman_cli pull --cert-dir "$AU/certs" "$r/team/podman:1"
    podman_cli image exists "$r/team/podman:1"
    # What the registry serves under the tag is, byte for byte, what podman pushed.
    sk inspect --cert-dir "$AU/certs" --creds "bob:$(pw bob)" --raw "docker://$r/team/podman:1" >"$AU/podman-manifest.json"
    assert_eq "$(sha256_of "$AU/podman-manifest.json")" "$(cat "$AU/podman.digest")" "bob pulls what alice pushed with podman"
    podman_cli logout "$r"
}

# Every refusal and login is in the audit log, and no secret is in the server's log.
auth_logged() {
    local mode
    for mode in basic token; do
        assert_grep "$AU/$mode.log" 'outcome[^a-z]*denied' "denials are logged ($mode)"
        assert_grep "$AU/$mode.log" 'outcome[^a-z]*failed' "failed logins are logged ($mode)"
        if grep -q "$(pw alice)\|$(pw bob)" "$AU/$mode.log"; then
            echo "a password appears in the $mode server's log"
            return 1
        fi
    done
    assert_grep "$AU/token.log" 'outcome[^a-z]*token' "token issuance is logged"
}

auth_cleanup() {
    if [ -f "$AU/docker-certs.dirs" ]; then
        while read -r d; do rm -rf "$d"; done <"$AU/docker-certs.dirs"
    fi
}

test_auth() {
    if [ "$TARGET" != berth ]; then
        say "auth: runs only with --target berth (it starts berth servers with TLS and auth)"
        return 0
    fi
    step "auth: CA, users (berth user add), TLS servers with basic and token auth" auth_setup
    [ "$STEP_OK" = 1 ] || { skip_rest auth "setup failed"; auth_cleanup; return 0; }
    step "auth: challenges (Basic, Bearer with realm and service); no plain HTTP on the TLS port" auth_challenges
    DOCKER_CLI=${DOCKER_CLI:-$(dirname "$(command -v dockerd)")/docker}
    [ -x "$DOCKER_CLI" ] || DOCKER_CLI=$(command -v docker)
    export DOCKER_HOST=unix://$DK/docker.sock DOCKER_CONFIG=$DK/config
    if ! "$DOCKER_CLI" version >/dev/null 2>&1; then
        step "auth: start containerd and dockerd" docker_start
    fi
    if ! "$DOCKER_CLI" image inspect e2e/img:v1 >/dev/null 2>&1; then
        step "auth: load the test image into docker" docker_cli load -i "$IMG/docker-v1.tar"
    fi
    step "auth: docker login/push/pull, refusals and anonymous pulls (basic auth, TLS)" docker_auth basic
    step "auth: docker login/push/pull, refusals and anonymous pulls (token auth, TLS)" docker_auth token
    step "auth: skopeo --creds (basic auth)" skopeo_auth basic
    step "auth: skopeo --creds (token auth)" skopeo_auth token
    step "auth: podman login, push and pull (token auth)" podman_auth
    step "auth: the catalog is filtered; a mount needs pull on its source; delete needs delete" policy_filters
    step "auth: forged, foreign and out-of-scope tokens are refused" forged_tokens
    step "auth: logins, failures and denials are logged, passwords are not" auth_logged
    auth_cleanup
}

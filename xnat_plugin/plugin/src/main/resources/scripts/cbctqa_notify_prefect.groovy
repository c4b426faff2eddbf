/*
 * CBCT QA monitor: XNAT automation script "cbctqa_notify_prefect".
 *
 * When a CT session (cone-beam CT arrives as xnat:ctSessionData) is archived, send one Prefect
 * event so that scoring starts within seconds:
 *
 *   POST <prefect_api_url>/events           (e.g. http://prefect:4200/api/events)
 *   [{"event": "xnat.session.archived",
 *     "resource": {"prefect.resource.id": "xnat.session.<session ID>", ...},
 *     "payload": {"project", "subject", "label", "uri", ...}, "occurred", "id"}]
 *
 * This is the fast path only. It never blocks or fails the archive: XNAT runs automation scripts
 * after the archive, on its own queue; every network call here has a connect and a read timeout;
 * every failure is caught and logged, never rethrown. A missed event is picked up by the polling
 * flow, which remains the safety net (see xnat_plugin/plugin/README.md).
 *
 * Configuration (first found wins):
 *   1. XNAT configuration service, tool "cbctqa", path "prefect_api_url" (site-wide), e.g.
 *        curl -u admin -X PUT "$XNAT/data/config/cbctqa/prefect_api_url?inbody=true" \
 *             -d 'http://prefect:4200/api'
 *      optional path "prefect_api_key" for Prefect Cloud (sent as a Bearer token, never logged);
 *   2. JVM system properties cbctqa.prefect_api_url / cbctqa.prefect_api_key;
 *   3. environment variables CBCTQA_PREFECT_API_URL / CBCTQA_PREFECT_API_KEY of XNAT's Tomcat.
 * With no URL configured the script logs one line and does nothing.
 *
 * Variables XNAT binds for automation scripts: user, scriptId, event, srcEventId, srcEventClass,
 * srcWorkflowId, scriptWorkflowId, dataType, dataId (the session ID), externalId (the project),
 * workflow.
 */

import groovy.json.JsonOutput
import groovy.transform.Field
import org.nrg.xdat.XDAT
import org.nrg.xdat.om.XnatImagesessiondata
import org.slf4j.Logger
import org.slf4j.LoggerFactory

import java.nio.charset.StandardCharsets
import java.time.Instant

@Field final Logger log = LoggerFactory.getLogger("org.cbctqa.xnat.automation.NotifyPrefect")

/** Prefect event name; the scoring deployment's trigger matches on it. */
@Field final String EVENT_NAME = "xnat.session.archived"
/** Session types that are scored (cone-beam CT sessions are imported as CT sessions). */
@Field final Set<String> SESSION_TYPES = ["xnat:ctSessionData"] as Set
/** Milliseconds allowed to open the connection to Prefect. */
@Field final int CONNECT_TIMEOUT_MS = 5000
/** Milliseconds allowed to wait for Prefect's answer. */
@Field final int READ_TIMEOUT_MS = 10000
/** Attempts for connection errors and 5xx answers (no retry on 4xx). */
@Field final int MAX_ATTEMPTS = 2
/** Pause between attempts, in milliseconds. */
@Field final long RETRY_PAUSE_MS = 1000L

/** A setting from XNAT's configuration service, a JVM property or the environment; null if unset. */
String setting(String name) {
    try {
        String value = XDAT.getConfigService()?.getConfigContents("cbctqa", name)
        if (value?.trim()) {
            return value.trim()
        }
    } catch (Exception e) {
        log.warn("cbctqa: cannot read XNAT config cbctqa/{}: {}", name, e.toString())
    }
    String property = System.getProperty("cbctqa." + name)
    if (property?.trim()) {
        return property.trim()
    }
    String env = System.getenv("CBCTQA_" + name.toUpperCase())
    return env?.trim() ? env.trim() : null
}

/** The event list Prefect's POST /api/events accepts (one event). */
List<Map> buildEvents(XnatImagesessiondata session, String siteUrl) {
    String sessionId = session.getId()
    String project = session.getProject()
    String subjectId = session.getSubjectId()
    String subjectLabel = session.getSubjectData()?.getLabel() ?: subjectId
    String label = session.getLabel()
    String uri = "/data/projects/${project}/subjects/${subjectLabel}/experiments/${label}".toString()
    return [[
            id      : UUID.randomUUID().toString(),
            occurred: Instant.now().toString(),
            event   : EVENT_NAME,
            resource: [
                    "prefect.resource.id"  : "xnat.session.${sessionId}".toString(),
                    "prefect.resource.name": label,
                    "xnat.project"         : project,
            ],
            related : [
                    ["prefect.resource.id": "xnat.project.${project}".toString(), "prefect.resource.role": "project"],
                    ["prefect.resource.id": "xnat.subject.${subjectId}".toString(), "prefect.resource.role": "subject"],
            ],
            payload : [
                    session_id: sessionId,
                    project   : project,
                    subject   : subjectLabel,
                    subject_id: subjectId,
                    label     : label,
                    xsi_type  : session.getXSIType(),
                    uri       : uri,
                    xnat_url  : siteUrl,
            ],
    ]]
}

/** POST the events; returns true when Prefect accepted them. Never throws. */
boolean postEvents(String apiUrl, String apiKey, String body, String sessionId) {
    URL url = new URL(apiUrl.replaceAll("/+\$", "") + "/events")
    for (int attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
        HttpURLConnection connection = null
        try {
            connection = (HttpURLConnection) url.openConnection()
            connection.setConnectTimeout(CONNECT_TIMEOUT_MS)
            connection.setReadTimeout(READ_TIMEOUT_MS)
            connection.setRequestMethod("POST")
            connection.setDoOutput(true)
            connection.setRequestProperty("Content-Type", "application/json")
            connection.setRequestProperty("Accept", "application/json")
            if (apiKey) {
                connection.setRequestProperty("Authorization", "Bearer " + apiKey)
            }
            connection.getOutputStream().withCloseable { it.write(body.getBytes(StandardCharsets.UTF_8)) }
            int status = connection.getResponseCode()
            if (status >= 200 && status < 300) {
                log.info("cbctqa: sent {} for session {} to {} (HTTP {})", EVENT_NAME, sessionId, url, status)
                return true
            }
            String answer = connection.getErrorStream()?.getText("UTF-8")?.take(300)
            if (status < 500) {
                log.error("cbctqa: Prefect at {} refused {} for session {} (HTTP {}: {}); not retried, "
                        + "polling will pick the session up. Check the URL and API key.",
                        url, EVENT_NAME, sessionId, status, answer)
                return false
            }
            log.warn("cbctqa: Prefect at {} answered HTTP {} for session {} (attempt {}/{}): {}",
                    url, status, sessionId, attempt, MAX_ATTEMPTS, answer)
        } catch (IOException e) {
            log.warn("cbctqa: cannot reach Prefect at {} for session {} (attempt {}/{}): {}",
                    url, sessionId, attempt, MAX_ATTEMPTS, e.toString())
        } finally {
            connection?.disconnect()
        }
        if (attempt < MAX_ATTEMPTS) {
            Thread.sleep(RETRY_PAUSE_MS)
        }
    }
    log.error("cbctqa: {} for session {} not delivered to {} after {} attempts; polling will pick "
            + "the session up.", EVENT_NAME, sessionId, url, MAX_ATTEMPTS)
    return false
}

// ------------------------------------------------------------------------------------ main
try {
    if (!(dataType in SESSION_TYPES)) {
        log.debug("cbctqa: {} {} is not a CT session; no event sent", dataType, dataId)
        return
    }
    String apiUrl = setting("prefect_api_url")
    if (!apiUrl) {
        log.info("cbctqa: no Prefect URL configured (XNAT config cbctqa/prefect_api_url); "
                + "session {} will be found by polling", dataId)
        return
    }
    XnatImagesessiondata session = XnatImagesessiondata.getXnatImagesessiondatasById(dataId, user, false)
    if (session == null) {
        log.warn("cbctqa: session {} (project {}) not found after archive; no event sent", dataId, externalId)
        return
    }
    String siteUrl = null
    try {
        siteUrl = XDAT.getSiteConfigPreferences()?.getSiteUrl()
    } catch (Exception e) {
        log.debug("cbctqa: site URL unavailable: {}", e.toString())
    }
    String body = JsonOutput.toJson(buildEvents(session, siteUrl))
    postEvents(apiUrl, setting("prefect_api_key"), body, session.getId())
} catch (Exception e) {
    // Whatever happens, the archive has already succeeded; polling remains the safety net.
    log.error("cbctqa: could not notify Prefect of session {}: {}", dataId, e.toString())
}

/*
 * CBCT QA monitor: XNAT plugin class.
 *
 * Registers the two datatypes of the "cbctqa" schema (schemas/cbctqa/cbctqa.xsd in this JAR):
 *   cbctqa:qaAssessmentData  one automatic CNN + Grad-CAM assessment of one CBCT scan
 *   cbctqa:ratingData        one radiologist's Likert ratings of one CBCT session
 * Both extend xnat:imageAssessorData, so they are stored under the CT session they assess.
 *
 * XNAT's annotation processor turns this annotation into
 * META-INF/xnat/cbctqaPlugin-plugin.properties; on start-up XNAT reads that file, loads the
 * schema and display documents, creates the tables, and lists the datatypes under
 * Administer > Data Types. The plugin has no Java services of its own: the scoring runs outside
 * XNAT (Prefect flows) and writes back through XNAT's REST API.
 */
package org.cbctqa.xnat.plugin;

import org.nrg.framework.annotations.XnatDataModel;
import org.nrg.framework.annotations.XnatPlugin;

@XnatPlugin(
        value = CbctQaPlugin.PLUGIN_ID,
        name = "CBCT QA monitor",
        version = CbctQaPlugin.VERSION,
        description = "Automatic image-quality scoring of head-and-neck CBCT sessions with "
                + "Grad-CAM Attribution Energy, and radiologists' Likert ratings.",
        dataModels = {
                @XnatDataModel(
                        value = CbctQaPlugin.QA_ASSESSMENT,
                        singular = "CBCT QA Assessment",
                        plural = "CBCT QA Assessments",
                        code = "CBCTQA"),
                @XnatDataModel(
                        value = CbctQaPlugin.RATING,
                        singular = "CBCT Quality Rating",
                        plural = "CBCT Quality Ratings",
                        code = "CBCTRT")
        })
public class CbctQaPlugin {
    /** Plugin identifier: names META-INF/xnat/cbctqaPlugin-plugin.properties. */
    public static final String PLUGIN_ID = "cbctqaPlugin";

    /** Plugin version; equals "version" in gradle.properties. */
    public static final String VERSION = "0.1.0";

    /** Automatic assessment datatype (schema element cbctqa:qaAssessmentData). */
    public static final String QA_ASSESSMENT = "cbctqa:qaAssessmentData";

    /** Radiologist rating datatype (schema element cbctqa:ratingData). */
    public static final String RATING = "cbctqa:ratingData";
}

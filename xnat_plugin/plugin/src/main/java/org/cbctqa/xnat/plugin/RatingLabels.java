/*
 * CBCT QA monitor: the label of a radiologist's rating, as the project's gateway makes it.
 *
 * One rater has at most one cbctqa:ratingData per session, labelled
 * {session_label}_rating_{rater} with every character outside [A-Za-z0-9_-] replaced by "_"
 * (xnat_plugin.gateway.records.rating_label in the Python package; the tests in
 * tests/xnat_plugin/test_plugin_sources.py check that both use the same rule). XNAT requires
 * labels to be unique per project, so the rating screen and the save both look this label up
 * before a new rating is made: a second save by the same radiologist updates their rating.
 */
package org.cbctqa.xnat.plugin;

import java.util.regex.Pattern;

public final class RatingLabels {
    /** Characters XNAT does not allow in labels; each is replaced by "_". */
    public static final String UNSAFE_LABEL_CHARACTERS = "[^A-Za-z0-9_-]";

    /** Joins the session label and the rater's login. */
    public static final String RATING_INFIX = "_rating_";

    private static final Pattern UNSAFE = Pattern.compile(UNSAFE_LABEL_CHARACTERS);

    private RatingLabels() {
    }

    /**
     * The label of {@code rater}'s rating of the session labelled {@code sessionLabel}.
     *
     * @param sessionLabel the CT session's label (not its accession number)
     * @param rater        the rater's XNAT login
     * @return {@code {sessionLabel}_rating_{rater}}, made safe for an XNAT label
     * @throws IllegalArgumentException if either part is null or blank
     */
    public static String ratingLabel(final String sessionLabel, final String rater) {
        if (sessionLabel == null || sessionLabel.trim().isEmpty()) {
            throw new IllegalArgumentException("rating label: the session label is empty");
        }
        if (rater == null || rater.trim().isEmpty()) {
            throw new IllegalArgumentException("rating label: the rater is empty");
        }
        return UNSAFE.matcher(sessionLabel + RATING_INFIX + rater).replaceAll("_");
    }
}
